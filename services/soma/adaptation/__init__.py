"""Live adaptation as the product runs it: the driver that carries out the pure reconcile step
(`soma.session.reconcile`) over gRPC, the compare-and-set update of a session's live record that
every writer uses, the embedded reconcile loop, and `build_driver` for both modes."""

"""Kubernetes edges of soma: the SomaSession custom resource as the dialogue service sees it.

Only cluster mode touches this package; embedded mode never imports the Kubernetes client.
"""

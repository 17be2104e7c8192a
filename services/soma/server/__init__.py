"""The one server framework every soma service runs in: health, reflection, interceptors
for tracing, metrics and status mapping, graceful drain on SIGTERM."""

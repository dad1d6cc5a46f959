"""The gRPC edge: servicer, interceptor, auth, limits, validation, TLS (protobuf lives here)."""

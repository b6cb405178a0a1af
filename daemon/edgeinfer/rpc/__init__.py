"""gRPC edge: thin servicers, protobuf <-> numpy converters, error translation."""

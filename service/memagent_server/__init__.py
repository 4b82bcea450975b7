"""The memagent gRPC service: protobuf in, memory-store calls, protobuf out."""

"""Code generated from proto/memagent/v1/memagent.proto by proto/generate.sh; do not edit."""

"""I/O: storage (local / file:// / s3://), manifests, image decode/validate/encode, face alignment."""

"""Operations: the container image, deployment files and the benchmark (`python -m ops.bench.bench`)."""

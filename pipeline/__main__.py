"""`python -m pipeline ...` is `infir ...`."""

from pipeline.cli import entrypoint

if __name__ == "__main__":
    entrypoint()

"""Generated from proto/imgpipe/v1 by `python -m imgpipe.contracts.codegen`."""

"""The model stages: detect, generate and matte, each a consumer built on one stage runner."""

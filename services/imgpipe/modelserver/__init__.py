"""A local model server: the CPU backends (HaarPetDetector, PillowStylizer, GrabCutMatter) behind the
HTTP protocols of the stages' HTTP backends (imgpipe.backends), for development and contract tests.

`app.create_app()` builds the FastAPI app; `server.main(argv)` / `python -m imgpipe.modelserver`
runs it; `server.register(subparsers)` adds it to the `imgpipe` command.
"""

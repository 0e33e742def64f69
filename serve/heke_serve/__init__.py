"""heke-serve: HEKE scores over HTTP (FastAPI + uvicorn, or Ray Serve), built on the lean
runtime (docs/ARCHITECTURE.md). No torch is imported here or below."""

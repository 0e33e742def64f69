"""heke_corpus: score a catalogue on a Ray cluster (``heke-corpus``), record for record what
``heke-run`` writes; built on :mod:`heke_runtime` (docs/ARCHITECTURE.md)."""

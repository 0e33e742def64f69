"""heke_finetune: features, dataset lists, content splits, metrics, blind evaluation,
the authors' fine-tuning protocol and the synthetic benchmark set, with their command lines
(``heke-features``, ``heke-eval``, ``heke-finetune``, ``heke-make-synthetic``).

torch is imported only by the parts that train or run the reference model
(docs/ARCHITECTURE.md)."""

"""Scripts that build the bundled demo model: tokenizer, data recipe, pretraining (docs/DEMO_MODEL.md).

Run them as modules: `python -m agentrt.demo.tokenizer`, `python -m agentrt.demo.pretrain`,
`python -m agentrt.demo.corpus` (retrofit data). Importing this package loads nothing heavy.
"""

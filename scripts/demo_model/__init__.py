"""The embedded demo model of Attention Focus: a tiny SD3-shaped text-to-image model trained on drawn shapes.

``scenes`` (scenes and captions), ``textenc`` (the seeded CLIP-L), ``model`` (architecture and files),
``dataset`` / ``train_vae`` / ``train_dit`` / ``train`` (training), ``evaluate`` (localisation measured).
Import as ``demo_model`` with ``scripts/`` on ``sys.path``; ComfyUI must be importable (tests/harness boots it).
"""

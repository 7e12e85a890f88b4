"""aaa-keras: AAA-Net (attention-aware adversarial network) for person re-ID in Keras 3."""

__version__ = "0.1.0"

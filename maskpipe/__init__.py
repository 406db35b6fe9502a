"""maskpipe: train and serve the mask / gender / age face-photo classifier on Kubeflow."""

__version__ = "0.1.0"

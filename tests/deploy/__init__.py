"""Tests of what deploys skinscreen: manifests, images, metrics, graceful shutdown."""

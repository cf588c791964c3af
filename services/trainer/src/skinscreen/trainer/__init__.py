"""skinscreen trainer: trains, evaluates, exports and publishes the fusion model."""

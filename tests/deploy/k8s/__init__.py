"""Static checks of deploy/: rendered overlays, custom resources, images, alerts, dashboard."""

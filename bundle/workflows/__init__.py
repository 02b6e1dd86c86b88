"""Workflow pieces the bundle configs wire into MONAI's ignite engines."""

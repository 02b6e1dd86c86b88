"""PerceptGuide ultrasound bundle: prompt-guided segmentation and classification (MONAI bundle)."""

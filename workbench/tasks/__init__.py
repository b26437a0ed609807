"""Task generators and parsers: addition problems, CoT formats, hints, corruptions."""

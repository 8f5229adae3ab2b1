"""On-the-fly distillation (``mlffd distill``): committee uncertainty picks the frames the
teacher labels, and the student is retrained until its MD stays where it is sure."""

"""Tasks and text: the procedural task suites, an organization's data files, examples turned into token
ids, and scoring a model's answers (accuracy, PGR, cosine, R²)."""

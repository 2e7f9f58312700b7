"""Feature extraction on Ray: ``python -m runner.extract`` (videos -> one feature file per video)."""

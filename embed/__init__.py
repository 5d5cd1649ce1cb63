"""The embed stage: run each frozen foundation model once over a recipe's inputs and fill a cache."""

"""A fuzzy "this value does not exist" key-value store over word embeddings."""

from fuzzy_kv.database import DEMO_RECORDS, Answer, Database, Explanation
from fuzzy_kv.embeddings import Embeddings
from fuzzy_kv.errors import OutOfVocabulary

__all__ = ["DEMO_RECORDS", "Answer", "Database", "Embeddings", "Explanation", "OutOfVocabulary"]

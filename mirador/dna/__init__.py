"""ModelDNA: the user's preference profile (schema, files, applying it, similarity, editing).

Entry points: store.load_for_ask / store.load_user, apply.DnaShaper, similarity.compare.
"""

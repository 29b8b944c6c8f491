"""The pieces behind :class:`romevc.repo.Repo`: materialising commits, merging, reports, export.

``romevc.repo`` is the one public entry point; these modules keep it short. Nothing here
writes to the ledger: the ``Repo`` verbs compute first, then write in one transaction.
"""

"""Vector stores: documents made searchable, for `file_search` and answers with sources.

extract.py   a stored file's text: plain text and Markdown as they are, PDF (pypdf),
             HTML (inscriptis)
chunking.py  the chunking strategy (auto, static) and token windows over a text
stores.py    stores, their files and batches in the database; the OpenAI objects
ingest.py    the background worker: claim a queued file, extract, chunk, embed,
             write the chunks; resumes after a kill
index.py     one store's index, loaded from its chunks: exact below a size, usearch
             HNSW above it; never shared between stores (so never between tenants)
filters.py   OpenAI's comparison and compound filters on file attributes
search.py    a query's vectors against one or more stores: scored chunks
sources.py   numbered sources for a prompt and the citations of an answer
"""

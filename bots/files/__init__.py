"""Files in a question: text-like files and PDFs become part of the question, within the model's context.

    limits = FileLimits.from_environ(environ)
    read = await read_files([Incoming(name, size, mimetype, fetch), ...], limits)   # never raises for a bad file
    question = compose(text, read, budget_bytes)      # the files' text, cut to fit, and a note for each file

``sniff.py`` decides what a file is (pure), ``pdf.py`` runs pypdf in a worker process with limits
(``pdf_worker.py``), ``read.py`` downloads and reads within the limits and puts the text into the question.
"""

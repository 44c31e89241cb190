"""The owner of run folders: the only code that reads or writes run.json and the layout.

* :mod:`.layout`: folder names and per-image paths (stems are plain names);
* :mod:`.record`: run.json as one versioned dataclass, with the manifest of owned files;
* :mod:`.read`: the one reader (reopen, npe2 reader, denoise, edit guards);
* :mod:`.write`: the one writer (staged, swapped in whole, removes only its own files);
* :mod:`.save`: what the CLI, the napari docks and ``datus denoise`` write through it.
"""

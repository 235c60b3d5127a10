"""The RCDM Gradio app, launched as a Gradio Space launches one: `python app/app.py [--model DIR ...]`.

The app's code is the package module `rcdm.app` (one module per tab), so an installed wheel serves it too, with
`rcdm app`; both take the same flags and bind 127.0.0.1 with no share link unless told otherwise.
"""
from rcdm.app import main

if __name__ == "__main__":
    main()

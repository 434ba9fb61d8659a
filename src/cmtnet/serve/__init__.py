"""`cmtnet serve`: a trained CMT over HTTP, with dynamic batching, limits, metrics and a web page.

    cmtnet serve --checkpoint runs/demo/model_ema.safetensors            # http://127.0.0.1:8000
    curl -F image=@digit.png http://127.0.0.1:8000/predict

See docs/serve.md. In Python, the same service is `app.create_app(handlers.load_handler(options), app.Limits(...))`;
the modules are imported on use, so that the other commands do not load the web stack.
"""

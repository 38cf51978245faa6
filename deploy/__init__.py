"""The device side: ONNX models under ONNX Runtime, with numpy alone (no torch, no brevitas).

- :mod:`qadtr.deploy.session`: model validation, session options (providers, threads, graph level), predictor;
- :mod:`qadtr.deploy.graph`: ORT's optimized graph, operator histogram, integer-kernel coverage;
- :mod:`qadtr.deploy.inputs`: models (with manifest facts), patch files, evaluation images;
- :mod:`qadtr.deploy.check`: ``qadtr check``, the patch transfer matrix under ORT;
- :mod:`qadtr.deploy.bench`, :mod:`qadtr.deploy.baselines`: ``qadtr bench`` and its fp32 / ORT int8 baselines;
- :mod:`qadtr.deploy.report`, :mod:`qadtr.deploy.plots`: ``qadtr report``, one offline HTML page and Markdown.
"""

raise RuntimeError("bad workflow code")

class Demo:
    pass

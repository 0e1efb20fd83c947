"""placeholder"""
def add_demo_args(p):
    pass
def cmd_demo(args):
    return 1

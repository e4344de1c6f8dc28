"""A module re-exported by sample_mod; trusted only when tests trust its prefix."""


class Helper:
    def __init__(self, x: int = 0):
        self.x = x

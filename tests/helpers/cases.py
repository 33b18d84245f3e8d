"""Layer shapes the device tests share (Arm on the emulated phone, Mali on PoCL)."""

CASES = {  # (out, in, H, W, batch), stride, padding (top, left, bottom, right), taps, bias, relu
    "odd-sizes-bias-relu": ((12, 7, 13, 17, 1), 1, (1, 1, 1, 1), 4, True, True),
    "stride2": ((24, 16, 20, 20, 1), 2, (1, 1, 1, 1), 4, False, False),
    "asymmetric-padding-batch2": ((3, 5, 9, 11, 2), 1, (0, 2, 1, 0), 3, False, True),
    "dense-first-layer-stride2": ((9, 3, 15, 15, 1), 2, (1, 1, 1, 1), 9, True, True),
    "vgg-like-8x": ((32, 32, 28, 28, 1), 1, (1, 1, 1, 1), 4, True, False),
}

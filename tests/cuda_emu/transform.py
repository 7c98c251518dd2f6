#!/usr/bin/env python3
"""transform.py IN.cu OUT.cpp: a CUDA source as C++ for the emulator (emu.h): each kernel launch
`kernel<<<grid, block[, smem[, stream]]>>>(args);` becomes `emu_check_args(...); emu_launch(grid, block, smem,
[&] { kernel(args); });`, and `extern __shared__ float sm[];` the emulator's dynamic shared memory."""
import sys


def split_top(text):
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def main():
    src = open(sys.argv[1]).read().replace("extern __shared__ float sm[];", "float *sm = emu_smem;")
    out, i = [], 0
    while True:
        j = src.find("<<<", i)
        if j < 0:
            out.append(src[i:])
            break
        k = j
        if src[k - 1] == ">":  # template arguments: kernel<HD><<<...
            depth = 0
            while True:
                k -= 1
                depth += src[k] == ">"
                depth -= src[k] == "<"
                if depth == 0:
                    break
        while k > 0 and (src[k - 1].isalnum() or src[k - 1] == "_"):
            k -= 1
        kern = src[k:j]
        e = src.find(">>>", j)
        cfg = split_top(src[j + 3:e])
        assert src[e + 3] == "(", src[e:e + 40]
        p, depth = e + 3, 0
        while True:
            depth += src[p] == "("
            depth -= src[p] == ")"
            if depth == 0:
                break
            p += 1
        args = src[e + 4:p]
        assert src[p + 1] == ";", src[p:p + 40]
        out.append(src[i:k])
        check = 'emu_check_args("%s"%s); ' % (kern, ", " + args if args.strip() else "")
        out.append('%semu_launch(dim3(%s), dim3(%s), %s, [&]() { %s(%s); });'
                   % (check, cfg[0], cfg[1], cfg[2] if len(cfg) > 2 else "0", kern, args))
        i = p + 2
    open(sys.argv[2], "w").write("".join(out))


if __name__ == "__main__":
    main()

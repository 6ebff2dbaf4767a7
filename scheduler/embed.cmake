# cmake -DIN=FILE -DOUT=FILE.c -DNAME=SYMBOL -P embed.cmake
# Writes OUT, a C file that defines `const char SYMBOL[]`: the bytes of IN followed by a
# NUL. The same IN always gives the same OUT (no dates, no absolute paths), so the
# binary that embeds it is reproducible.
file(READ "${IN}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(FIND "${body}" "0x00," nul)
if(NOT nul EQUAL -1)
  message(FATAL_ERROR "${IN}: a NUL byte would end the embedded text early")
endif()
# 16 bytes a line (CMake's regular expressions have no {16}).
string(REPEAT "0x[0-9a-f][0-9a-f]," 16 line)
string(REGEX REPLACE "(${line})" "\\1\n    " body "${body}")
get_filename_component(base "${IN}" NAME)
file(WRITE "${OUT}.tmp"
     "/* Generated from ${base} by embed.cmake at build time; do not edit. */\n"
     "extern const char ${NAME}[];\n"
     "const char ${NAME}[] = {\n    ${body}0x00};\n")
file(RENAME "${OUT}.tmp" "${OUT}")

# Sourced by the GPT script tests after they set TMP: CORPUS is the fortunes package's folder,
# or, when the package is missing, ten files of English-like text made under $TMP.
CORPUS=/usr/share/games/fortunes
if [ ! -d "$CORPUS" ]; then
  CORPUS=$TMP/corpus
  mkdir -p "$CORPUS"
  for i in 0 1 2 3 4 5 6 7 8 9; do
    for j in $(seq 1 200); do echo "A fortune, number $j of file $i, says that the test is running."; done \
      > "$CORPUS/f$i"
  done
fi

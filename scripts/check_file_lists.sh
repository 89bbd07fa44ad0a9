#!/usr/bin/env bash
# Checks that the hand-kept file lists are whole (ctest file_lists_complete):
#   - every file in host/ and driver/ is named in its folder's README.md: the
#     nearest README.md above it, by its path from there (`name.cpp`,
#     `name.*`, `name.{hpp,cpp}`, `sub/name.cpp`, `context*.cpp` all count);
#     CMakeLists.txt and README.md themselves excepted;
#   - every .cpp/.cu there is named in a CMakeLists.txt of its top folder;
#   - every tests/**/*_test.cpp is named in tests/CMakeLists.txt or tests/**/*.cmake;
#   - cmake/uhmm_headers.cmake lists exactly include/uhmm/*.{hpp,h} and kernels/uhmm/*.hpp;
#   - no CMake file uses file(GLOB): sources, tests and headers are listed.
# Prints every problem and exits 1 if there is one.
#   scripts/check_file_lists.sh [source-dir]
set -uo pipefail
root=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$root" || exit 2
problems=0
problem() { echo "check_file_lists: $*"; problems=$((problems + 1)); }

# The tree's files (tracked or new, not ignored); without git, find outside build trees.
tree_files() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files --cached --others --exclude-standard -- "$@" | sort -u | while read -r f; do
      [ -e "$f" ] && echo "$f"
    done
  else
    find "$@" -type d \( -name 'build*' -o -name '.*' \) ! -name . -prune -o -type f -print | sed 's|^\./||' | sort
  fi
}

# The names a README gives in backticks, one a line, {a,b} alternatives expanded.
readme_names() {
  # shellcheck disable=SC2016  # backticks, not an expansion
  grep -o '`[^`]*`' "$1" | tr -d '`' | while read -r token; do
    if [[ $token =~ ^(.*)\{([^{}]*)\}(.*)$ ]]; then
      local head=${BASH_REMATCH[1]} tail=${BASH_REMATCH[3]} alt
      IFS=',' read -ra alts <<<"${BASH_REMATCH[2]}"
      for alt in "${alts[@]}"; do echo "$head$alt$tail"; done
    else
      echo "$token"
    fi
  done
}

# The folder of the nearest README.md above $1, inside top folder $2.
readme_dir() {
  local dir
  dir=$(dirname "$1")
  while [ "$dir" != "$2" ] && [ ! -f "$dir/README.md" ]; do dir=$(dirname "$dir"); done
  echo "$dir"
}

named_in_readme() {
  local rel=$1 name
  while read -r name; do
    [[ $name == *[a-zA-Z]*.* || $name == */* ]] || continue  # a file name, not `gpu*`
    # shellcheck disable=SC2053  # unquoted: a README name may be a pattern (name.*)
    [[ $rel == $name ]] && return 0
  done <<<"$2"
  return 1
}

for top in host driver; do
  [ -f "$top/README.md" ] || { problem "$top/ has no README.md"; continue; }
  declare -A names=()
  while read -r f; do
    base=$(basename "$f")
    [ "$base" = README.md ] || [ "$base" = CMakeLists.txt ] && continue
    dir=$(readme_dir "$f" "$top")
    [ -n "${names[$dir]+x}" ] || names[$dir]=$(readme_names "$dir/README.md")
    named_in_readme "${f#"$dir"/}" "${names[$dir]}" || problem "$f is not named in $dir/README.md"
  done < <(tree_files "$top")
  unset names
  cmake_lists=$(tree_files "$top" | grep '/CMakeLists.txt$')
  while read -r f; do
    # shellcheck disable=SC2086
    grep -qF "$(basename "$f")" $cmake_lists tests/CMakeLists.txt ||
      problem "$f is built by no CMakeLists.txt under $top/"
  done < <(tree_files "$top" | grep -E '\.(cpp|cu)$')
done

test_lists=$(tree_files tests | grep -E '(^tests/CMakeLists.txt|\.cmake)$')
while read -r f; do
  # shellcheck disable=SC2086
  grep -qw "$(basename "$f" .cpp)" $test_lists || problem "$f is not listed in tests/CMakeLists.txt"
done < <(tree_files tests | grep -E '_test\.cpp$')

# The header lists: `  uhmm/name.hpp` lines of cmake/uhmm_headers.cmake, in their set().
listed_headers() {
  sed -n "/^set($1\$/,/^)/p" cmake/uhmm_headers.cmake | grep -E '^ +uhmm/' | tr -d ' ' | sort
}
compare_headers() {
  local on_disk
  on_disk=$(tree_files "$2/uhmm" | grep -E "$3" | grep -v /detail/ | sed "s|^$2/||" | sort)
  diff <(listed_headers "$1") <(echo "$on_disk") | grep -E '^[<>]' | while read -r side h; do
    if [ "$side" = ">" ]; then echo "$2/$h is not in $1 (cmake/uhmm_headers.cmake)"
    else echo "$1 (cmake/uhmm_headers.cmake) names $2/$h, which does not exist"; fi
  done
}
while read -r line; do [ -n "$line" ] && problem "$line"; done < <(
  compare_headers uhmm_public_headers include '\.(hpp|h)$'
  compare_headers uhmm_kernel_headers kernels '\.hpp$')

while read -r hit; do
  [ -n "$hit" ] && problem "file(GLOB) in $hit: list the files instead"
done < <(tree_files . | grep -E '(CMakeLists\.txt|\.cmake)$' | xargs grep -nE 'file *\( *GLOB' /dev/null 2>/dev/null)

[ "$problems" -eq 0 ] && echo "check_file_lists: every list is whole" && exit 0
exit 1

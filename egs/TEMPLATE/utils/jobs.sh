# Running several trainings side by side on one machine (source it).

# threads_for N: CPU threads for each of N jobs run side by side (at most $student_jobs at once),
# so that they share the cores instead of each taking all of them (OMP_NUM_THREADS, when set, wins).
threads_for() {
  local side_by_side=$(( $1 < student_jobs ? $1 : student_jobs ))
  [ "$side_by_side" -ge 1 ] || side_by_side=1
  echo "${OMP_NUM_THREADS:-$(( $(nproc) / side_by_side > 0 ? $(nproc) / side_by_side : 1 ))}"
}

# in_parallel N FUNCTION ARGS...: one background job per ARGS word, at most N at a time; fails if any fails.
in_parallel() {
  local max=$1 fn=$2 arg failed=0
  shift 2
  local -a pids=()
  for arg in "$@"; do
    if [ "${#pids[@]}" -ge "$max" ]; then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
    fi
    "$fn" "$arg" &
    pids+=($!)
  done
  for arg in "${pids[@]}"; do wait "$arg" || failed=1; done
  return $failed
}

#!/bin/bash
# The DVC study as one Slurm job: `sbatch experiments/tools/slurm_repro.sh [dvc exp run arguments]`.
# The batch step runs `dvc exp run` once; the stages that do not train run in it, and every stage that
# trains or evaluates starts `srun --ntasks=$SLURM_NTASKS` (params.yaml base.launcher=slurm), one process
# per task and GPU, with mmengine's Slurm launcher (DDP). Ask for other sizes on the sbatch command line:
#   sbatch -N 2 --ntasks-per-node 4 --gres gpu:4 experiments/tools/slurm_repro.sh -S train.batch_size=2
#SBATCH --job-name=alignzeg-study
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
set -euo pipefail
if [[ -z "${SLURM_NTASKS:-}" ]]; then
  echo "slurm_repro.sh: SLURM_NTASKS is not set: submit it with sbatch (or run it inside salloc)" >&2
  exit 2
fi
cd "${SLURM_SUBMIT_DIR:-.}"
# shellcheck disable=SC1091
source "${ALIGNZEG_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 MPLBACKEND=Agg
exec dvc exp run -S base.launcher=slurm -S "base.gpus=${SLURM_NTASKS}" "$@"

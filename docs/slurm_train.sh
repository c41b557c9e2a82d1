#!/bin/bash
#SBATCH --job-name=segsr
#SBATCH --nodes=1 --ntasks-per-node=1 --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@180          # USR1 to this script 3 minutes before the time limit
#SBATCH --requeue --open-mode=append
# sbatch docs/slurm_train.sh -opt options/train_SeGSR_HAT_x4.yml   (docs/training.md, "SLURM")
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=150   # the ranks' grace after the forwarded SIGTERM (torchrun's default: 30 s)
python -m segsr_basicsr.launch --standalone --nproc_per_node="${SLURM_GPUS_ON_NODE:-8}" \
    -m segsr_basicsr.train "$@" --launcher pytorch --auto_resume &
pid=$!
trap 'kill -TERM $pid' USR1 TERM     # the launcher forwards SIGTERM to every rank
wait $pid; code=$?
while [ $code -gt 128 ] && kill -0 $pid 2>/dev/null; do wait $pid; code=$?; done   # wait returned for the trap
if [ $code -eq 75 ]; then scontrol requeue "$SLURM_JOB_ID"; fi   # 75: stopped, checkpoint saved
exit $code

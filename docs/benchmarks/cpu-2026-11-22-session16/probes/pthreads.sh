# pthreads.sh PID SECONDS: CPU per thread of PID over SECONDS
P=$1; S=$2
snap() { for t in /proc/$P/task/*; do echo "$(basename $t) $(cat $t/comm) $(awk '{print $14+$15}' $t/stat)"; done; }
snap > /tmp/probe/a.txt; sleep $S; snap > /tmp/probe/b.txt
join <(sort /tmp/probe/a.txt) <(sort /tmp/probe/b.txt) | awk -v s=$S '{d=($5-$3)/100/s; if (d>0.005) printf "  %s %s %.3f cores\n",$1,$2,d}'

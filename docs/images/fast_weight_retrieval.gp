# gnuplot script written by examples/fast_weight (run from this directory: gnuplot fast_weight_retrieval.gp)
set terminal pngcairo size 760,440 font 'DejaVu Sans,10'
set output 'fast_weight_retrieval.png'
set title 'Retrieval error of N facts whose values arrive in two halves (d_k = 16, d_v = 8)'
set xlabel 'N (facts stored; 2N tokens)'
set ylabel 'mean |S^T k_i - v_i| / |v_i|'
set key bottom right box opaque
set grid
set yrange [0:*]
set linetype 1 lc rgb '#7b3294'
set linetype 2 lc rgb '#1b9e77'
set linetype 3 lc rgb '#56b4e9'
set linetype 4 lc rgb '#e66101'
set linetype 5 lc rgb '#b2182b'
plot for [i=2:6] 'fast_weight_retrieval.dat' using 1:i with linespoints title columnheader(i) lw 2 pt 7 ps 0.6

require_relative "jobs"

charges = (1..2000).map { |i| [i % 10, 100 + i] }
t = Time.now
Billing::ChargeJob.perform_bulk(charges)
bulk_ms = ((Time.now - t) * 1000).round(1)
Billing::ChargeJob.perform_async(7, 500)
Billing::ChargeJob.perform_in(1, 8, 250)            # scheduled: runs about a second from now
Billing::ChargeJob.perform_async(9, -5)             # the handler refuses it: dead set
Billing::FlakyGatewayJob.perform_async("order-1")   # fails: retry set, with backoff
Billing::MonthlyReportJob.perform_async("2026-12")  # deferred by the check point into a list

expected = Hash.new(0)
(charges + [[7, 500], [8, 250]]).each { |account, cents| expected[account] += cents }
File.write(ARGV.fetch(0), JSON.generate(expected))
puts "enqueued #{charges.size} charges with perform_bulk in #{bulk_ms} ms, plus 5 single jobs (one scheduled)"

require "redis"
Redis.sadd_returns_boolean = false if Redis.respond_to?(:sadd_returns_boolean=)
require "sidekiq/api"
require "json"

expected = JSON.parse(File.read(ARGV.fetch(0)))
charged = Sidekiq.redis { |c| c.hgetall("billing:charged") }
puts "account  charged (cents)  expected"
expected.keys.sort_by(&:to_i).each do |account|
  puts format("%7s  %15s  %8s %s", account, charged[account], expected[account], charged[account].to_i == expected[account] ? "ok" : "MISMATCH")
end
settled = Sidekiq.redis { |c| c.hgetall("billing:settled") }
held = Sidekiq.redis { |c| c.lrange("billing:reports:held", 0, -1) }.map { |j| JSON.parse(j)["args"] }
puts "check point: #{settled.values.sum(&:to_i)} cents settled in the same atomic step as each charge's acknowledgement " \
     "(#{settled == charged ? "equal to" : "DIFFERENT FROM"} the handlers' own totals); reports held back: #{held.inspect}"
stats = Sidekiq::Stats.new
puts "Sidekiq::Stats: processed=#{stats.processed} failed=#{stats.failed} retry=#{stats.retry_size} dead=#{stats.dead_size} enqueued=#{stats.enqueued}"
Sidekiq::RetrySet.new.each { |j| puts "RetrySet: #{j.klass} #{j.args.inspect} -> #{j["error_class"]}: #{j["error_message"]}" }
Sidekiq::DeadSet.new.each { |j| puts "DeadSet:  #{j.klass} #{j.args.inspect} -> #{j["error_class"]}: #{j["error_message"]}" }
Sidekiq::ProcessSet.new.each { |p| puts "ProcessSet: #{p["identity"]} concurrency=#{p["concurrency"]} queues=#{p["queues"].inspect} busy=#{p["busy"]}" }
exit(charged.all? { |a, v| v.to_i == expected[a] } && charged.size == expected.size && settled == charged && held.size == 1 ? 0 : 1)
